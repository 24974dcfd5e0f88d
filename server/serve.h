/* `finc serve`: configuration from FINC_* variables and flags, the server
 * started and readied, signals handled on a libuv loop (SIGTERM/SIGINT
 * drain, a second one stops at once), exit status 0 after a clean drain. */
#ifndef FINC_SERVE_H
#define FINC_SERVE_H

/* argv[0] is "serve". Returns the process exit status: 0, 1 when the server
 * cannot start (address in use, weights that do not load), 2 bad arguments. */
int finc_serve_main(int argc, char **argv);

#endif
