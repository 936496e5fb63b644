"""Contains all the data models used in inputs/outputs"""

from .auth_jwks_response_200 import AuthJwksResponse200
from .auth_jwks_response_200_additional_property_item import AuthJwksResponse200AdditionalPropertyItem
from .auth_start_session_data_body import AuthStartSessionDataBody
from .auth_start_session_data_body_grant_type import AuthStartSessionDataBodyGrantType
from .auth_start_session_json_body import AuthStartSessionJsonBody
from .auth_start_session_json_body_grant_type import AuthStartSessionJsonBodyGrantType
from .auth_token_data_body import AuthTokenDataBody
from .auth_token_data_body_grant_type import AuthTokenDataBodyGrantType
from .auth_token_json_body import AuthTokenJsonBody
from .auth_token_json_body_grant_type import AuthTokenJsonBodyGrantType
from .author import Author
from .channel_create import ChannelCreate
from .channel_read import ChannelRead
from .email_verification import EmailVerification
from .liveness import Liveness
from .mail_accepted import MailAccepted
from .message_create import MessageCreate
from .message_read import MessageRead
from .not_ready import NotReady
from .not_ready_checks import NotReadyChecks
from .not_ready_checks_additional_property import NotReadyChecksAdditionalProperty
from .page_channel_read import PageChannelRead
from .page_message_read import PageMessageRead
from .page_user_read import PageUserRead
from .password_change import PasswordChange
from .password_reset_confirm import PasswordResetConfirm
from .password_reset_request import PasswordResetRequest
from .problem_details import ProblemDetails
from .protected_message import ProtectedMessage
from .public_message import PublicMessage
from .readiness import Readiness
from .readiness_checks import ReadinessChecks
from .readiness_checks_additional_property import ReadinessChecksAdditionalProperty
from .refresh_request import RefreshRequest
from .ticket_read import TicketRead
from .token_pair import TokenPair
from .user_create import UserCreate
from .user_read import UserRead
from .v1_auth_start_session_data_body import V1AuthStartSessionDataBody
from .v1_auth_start_session_data_body_grant_type import V1AuthStartSessionDataBodyGrantType
from .v1_auth_start_session_json_body import V1AuthStartSessionJsonBody
from .v1_auth_start_session_json_body_grant_type import V1AuthStartSessionJsonBodyGrantType
from .v1_auth_token_data_body import V1AuthTokenDataBody
from .v1_auth_token_data_body_grant_type import V1AuthTokenDataBodyGrantType
from .v1_auth_token_json_body import V1AuthTokenJsonBody
from .v1_auth_token_json_body_grant_type import V1AuthTokenJsonBodyGrantType
from .validation_problem import ValidationProblem
from .validation_problem_errors_item import ValidationProblemErrorsItem

__all__ = (
    "AuthJwksResponse200",
    "AuthJwksResponse200AdditionalPropertyItem",
    "Author",
    "AuthStartSessionDataBody",
    "AuthStartSessionDataBodyGrantType",
    "AuthStartSessionJsonBody",
    "AuthStartSessionJsonBodyGrantType",
    "AuthTokenDataBody",
    "AuthTokenDataBodyGrantType",
    "AuthTokenJsonBody",
    "AuthTokenJsonBodyGrantType",
    "ChannelCreate",
    "ChannelRead",
    "EmailVerification",
    "Liveness",
    "MailAccepted",
    "MessageCreate",
    "MessageRead",
    "NotReady",
    "NotReadyChecks",
    "NotReadyChecksAdditionalProperty",
    "PageChannelRead",
    "PageMessageRead",
    "PageUserRead",
    "PasswordChange",
    "PasswordResetConfirm",
    "PasswordResetRequest",
    "ProblemDetails",
    "ProtectedMessage",
    "PublicMessage",
    "Readiness",
    "ReadinessChecks",
    "ReadinessChecksAdditionalProperty",
    "RefreshRequest",
    "TicketRead",
    "TokenPair",
    "UserCreate",
    "UserRead",
    "V1AuthStartSessionDataBody",
    "V1AuthStartSessionDataBodyGrantType",
    "V1AuthStartSessionJsonBody",
    "V1AuthStartSessionJsonBodyGrantType",
    "V1AuthTokenDataBody",
    "V1AuthTokenDataBodyGrantType",
    "V1AuthTokenJsonBody",
    "V1AuthTokenJsonBodyGrantType",
    "ValidationProblem",
    "ValidationProblemErrorsItem",
)
