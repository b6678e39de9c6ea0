from unity.cli import app

app()
