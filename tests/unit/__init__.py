"""Unit tests: no network beyond loopback, no Orthanc, no dcmtk."""
