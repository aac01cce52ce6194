"""Compliance suite: testinfra checks of any pyinfra inventory's hosts (``--inventory PATH``)."""
