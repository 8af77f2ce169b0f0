"""The client library: connect to an exporter session and drive its hardware.

Kept import-light: `jumpstarter.client.connection` pulls in gRPC when used.
"""
