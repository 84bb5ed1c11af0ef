from branchline.cli.main import run

run()
