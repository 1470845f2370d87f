from arcttt.cli import main

main()
