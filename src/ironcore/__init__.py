"""ironcore: a self-hosted device identity and connectivity service.

The open replacement for Google Cloud IoT Core, built for fleets whose devices keep their
keys in a secure element.
"""

__version__ = "0.1.0"
