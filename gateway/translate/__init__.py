"""Pure request and response translation between OpenAI format and other providers' formats."""
