from backupvault.cli.main import main

main()
