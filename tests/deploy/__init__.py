"""Checks of the deployment files under deploy/: manifests, the systemd unit, the image."""
