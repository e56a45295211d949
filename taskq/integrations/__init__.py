"""Framework integrations: Django (``taskq.integrations.django``)."""
