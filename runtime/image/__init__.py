"""Images: references, the store, transports, layer unpacking, image configs, overlay drivers.

Imported by `pirun` subcommands only, never on run.py's path. See docs/ARCHITECTURE.md, "Packages".
"""
