"""routerd: placeholder package; the central service lands with the controller/router issue."""
