/* Command-line conventions shared by the programs: --help, --version, exit codes
 * (0 ok, 1 runtime failure, 2 usage or configuration error), config loading with --set. */
#ifndef WAN_CLI_H
#define WAN_CLI_H

#include <stdbool.h>

#include "config.h"

void wan_cli_version(const char *prog); /* "wan-train 0.1.0 (git abc1234; CUDA backend: yes)" */
/* Print "prog: error: msg" and return the exit code of the recorded error class. */
int wan_cli_fail(const char *prog, int code);
/* Usage error: message, a hint to --help, exit code 2. */
int wan_cli_usage_error(const char *prog, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* defaults -> file (if path) -> each --set -> validate(world_size; 0 = unknown). */
typedef struct {
    const char *path;
    const char *sets[64];
    int nsets;
} wan_cli_config;
int wan_cli_add_set(wan_cli_config *cc, const char *prog, const char *assignment);
int wan_cli_load_config(const wan_cli_config *cc, wan_config *cfg, int world_size);

#endif
