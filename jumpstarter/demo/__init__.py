"""The demo lab: a simulated board on a pseudo-terminal with a local HTTP power switch."""
