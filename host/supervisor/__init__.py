"""The supervisor: owns every plugin process and the web tier. Must not import Flask or the proxy."""
