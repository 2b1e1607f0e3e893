from powerstripflocker.cli.main import main

main()
