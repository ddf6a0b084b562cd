#!/bin/sh
# Forms the replica set rs0 from the three StatefulSet members; safe to run any number of
# times: a set that already exists is left as it is.
set -eu
members="mongodb-0.mongodb:27017 mongodb-1.mongodb:27017 mongodb-2.mongodb:27017"
for member in $members; do
  until mongosh --quiet --norc --host "$member" --eval "db.adminCommand('ping').ok" >/dev/null 2>&1; do
    echo "waiting for $member"
    sleep 2
  done
done
mongosh --quiet --norc --host mongodb-0.mongodb:27017 --eval '
try {
  const status = rs.status();
  print("replica set " + status.set + " already initiated");
} catch (e) {
  if (e.codeName !== "NotYetInitialized") { throw e; }
  rs.initiate({
    _id: "rs0",
    members: [
      { _id: 0, host: "mongodb-0.mongodb:27017" },
      { _id: 1, host: "mongodb-1.mongodb:27017" },
      { _id: 2, host: "mongodb-2.mongodb:27017" },
    ],
  });
  print("replica set rs0 initiated");
}
'
