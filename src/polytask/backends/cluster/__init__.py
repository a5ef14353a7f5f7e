"""Dask and Ray backends: one Backend each, over what they share.

``base`` batches tasks into chunks and maps engine errors to polytask's;
``hub``/``sync``/``plugin`` keep Lock, Event, Channel... on the cluster (a hub
actor or scheduler plugin) so any task of the cluster can use them; ``dask`` and
``ray`` are the engines' thin adapters, imported only when named.
"""
