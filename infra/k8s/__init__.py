"""Kubernetes manifests (kustomize reads the YAML); the PrometheusRule generator, prometheus_rule."""
