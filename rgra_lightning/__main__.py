from rgra_lightning.cli import main

main()
