"""Fan-out benchmark: the service against nginx+nchan and a naive Tornado server, in one run."""
