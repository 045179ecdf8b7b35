"""The live progress page's files (/ui/): plain HTML, CSS and JavaScript, no build step, nothing fetched
from elsewhere. Served by appliance/http/ui.py."""
