/* finc's version: the CLI's, the server's and the metrics' build info. */
#ifndef FINC_VERSION_H
#define FINC_VERSION_H

#define FINC_VERSION "0.1.0"

#endif
