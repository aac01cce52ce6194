"""Ostiary's pyinfra 3 deploys: one module per role, ``site.py`` runs them in order."""
