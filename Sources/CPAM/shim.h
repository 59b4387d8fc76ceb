// Linux-PAM, for the web UI's logins with host accounts (libpam0g-dev).
#include <security/pam_appl.h>
