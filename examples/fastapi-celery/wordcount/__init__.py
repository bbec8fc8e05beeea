"""wordcount: the jobwire example of a FastAPI app whose Celery tasks stream
their progress to the browser through jobwire (see ../README.md)."""
