from probe.cli import app

app()
