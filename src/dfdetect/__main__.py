from dfdetect.cli import app

app()
