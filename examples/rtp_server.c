/* A retransmission buffer in a tiny server, as a media server keeps one to answer NACKs.
 *
 * Reads "SEQ LEN" lines on stdin (a packet with 16-bit sequence number SEQ and LEN bytes of
 * payload), keeps each packet in a list, prunes the packets that fell out of the window, and
 * answers "ok". Built twice by examples/test_rtp_server.py: as it shipped, pruning compares
 * sequence numbers with a plain "<", which stops pruning for good once the sequence number
 * wraps from 65535 to 0; with -DFIXED it uses serial-number arithmetic (RFC 1982). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW 64 /* packets kept for retransmission */

struct packet {
    uint16_t seq;
    char *payload;
    struct packet *next;
};

static struct packet *oldest = NULL, *newest = NULL;

static int out_of_window(uint16_t seq, uint16_t latest)
{
#ifdef FIXED
    return (uint16_t)(latest - seq) > WINDOW;
#else
    return seq < latest - WINDOW; /* the bug: wrong across the wrap */
#endif
}

int main(void)
{
    unsigned seq;
    size_t len;
    while (scanf("%u %zu", &seq, &len) == 2) {
        struct packet *p = malloc(sizeof *p);
        if (p == NULL || (p->payload = malloc(len)) == NULL) {
            return 1;
        }
        memset(p->payload, (int)(seq & 0xff), len);
        p->seq = (uint16_t)seq;
        p->next = NULL;
        if (newest != NULL) {
            newest->next = p;
        } else {
            oldest = p;
        }
        newest = p;
        while (oldest != NULL && out_of_window(oldest->seq, p->seq)) {
            struct packet *gone = oldest;
            oldest = gone->next;
            free(gone->payload);
            free(gone);
        }
        puts("ok");
        fflush(stdout);
    }
    return 0;
}
