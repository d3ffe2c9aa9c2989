"""What a shared server adds to LoRA Lab: who acts and what each role may do (access), local accounts and
sign-in sessions (accounts), the server's settings (settings), and what a request from a browser may touch
(policy). Nothing here imports torch; the dashboard's lora_ui.auth and the CLI's team commands sit on top."""
