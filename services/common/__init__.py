"""What every service shares: settings base, app factory, errors, HTTP client, audio I/O,
logging with correlation ids, metrics, bounded inference runner and test helpers.

Keep it small: code with one user lives in that service.
"""
