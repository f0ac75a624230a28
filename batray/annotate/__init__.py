"""The human preference annotation app (§3.3, Fig. 1): FastAPI + SQLAlchemy, exported as preferences."""
