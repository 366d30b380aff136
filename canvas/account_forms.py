"""The sign-up form: username and password, a confirmation only if given."""

from django import forms
from django.contrib.auth.forms import UserCreationForm
from django.http import QueryDict

from .services import ANONYMOUS_PREFIX

MSG_ANON_USERNAME = (
    f"Usernames starting with “{ANONYMOUS_PREFIX}” are kept for anonymous"
    " players; choose another."
)


def _with_confirmation(data: QueryDict) -> QueryDict:
    """Map `password` (or `password1`) and any confirmations onto Django's fields.

    The contract asks for username and password only, so the confirmation
    defaults to the password; any confirmation that is given must match it.
    """
    data = data.copy()
    given = [data.get(name, "") for name in ("password", "password1", "password2")]
    given = [value for value in given if value]
    if given:
        data["password1"] = given[0]
        data["password2"] = next((v for v in given[1:] if v != given[0]), given[0])
    return data


class SignupForm(UserCreationForm):
    """Django's UserCreationForm (validators, unique names) without a required
    confirmation."""

    def __init__(self, data: QueryDict | None = None, *args, **kwargs) -> None:
        if data is not None:
            data = _with_confirmation(data)
        super().__init__(data, *args, **kwargs)
        confirmation = self.fields["password2"]
        confirmation.required = False
        confirmation.help_text = "Optional: type it again to catch a typo."

    def clean_username(self) -> str:
        # An account must never pass for (or share a name with) an anonymous
        # player: moderators tell players apart by name.
        username = super().clean_username()
        if username.lower().startswith(ANONYMOUS_PREFIX):
            raise forms.ValidationError(MSG_ANON_USERNAME)
        return username
