"""The local demo: five rollouts under Locust load, with a report (see scenarios.py)."""
