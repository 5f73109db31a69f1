from rgra_lightning.commands import run

run()
