from phiexport.cli import main

main()
