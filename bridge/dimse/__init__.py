"""The DIMSE side: pynetdicom application entity, association policy and service handlers."""
