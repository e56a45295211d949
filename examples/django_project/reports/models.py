from django.db import models


class Report(models.Model):
    """A report whose word count a task computes after the request returned."""

    text = models.TextField()
    status = models.CharField(max_length=16, default="pending")
    words = models.IntegerField(null=True)
