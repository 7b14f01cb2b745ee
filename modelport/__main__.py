from modelport.cli.main import app

app()
