"""The lab host: boards of the inventory run by supervisord, started and stopped by udev hotplug.

`render` writes the supervisord include, `hotplug` turns udev events into
start/stop requests, `supervisor` is the one XML-RPC client, `devices` records
which device each board got, `status`/`reload`/`suggest` back `jumpstarter lab`.
"""
