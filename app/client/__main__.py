from app.client.main import main

main()
