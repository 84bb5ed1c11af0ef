"""Unit tests, one module per service plus test_common; no database, no network beyond loopback.

A package, so that its modules (`unit.test_api`, `unit.conftest`, ...) never clash
with tests/conftest.py or with test modules elsewhere under tests/.
"""
