"""The deployment shape: nginx, container image, compose and Kubernetes files, and `make cluster` (cluster.py)."""
