"""Container images (the Dockerfiles); api_lock writes the main image's requirements/api.lock."""
