"""The graph a person builds: file format, layer catalog, templates and the canvas adapter."""
