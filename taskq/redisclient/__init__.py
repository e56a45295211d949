"""How taskq reaches Redis: one layer shared by the broker, the result backend and
the beat lock.

``options`` validates connection options, ``client`` builds connection pools and
turns redis-py errors into taskq's, and ``line`` is a connection of one's own for
hot calls. Named so that it never reads like (or shadows) the ``redis`` package.
"""
