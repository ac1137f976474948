"""``python -m serving``: run the API on USERSIGNALS_HOST:USERSIGNALS_API_PORT."""
import uvicorn

from usersignals.settings import load_settings


def main() -> None:
    s = load_settings()
    uvicorn.run("serving.app:create_app", factory=True, host=s.host, port=s.api_port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
