"""One error type for everything a user can get wrong; the CLI prints it as one line."""


class PQVError(Exception):
    """A problem the user can fix: the message names the problem, `fix` says how."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}" + (f" (fix: {fix})" if fix else ""))
