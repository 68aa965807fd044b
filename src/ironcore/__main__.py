from ironcore.cli.main import app

app()
