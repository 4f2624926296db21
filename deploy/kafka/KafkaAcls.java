// Creates ACL bindings on a secured local broker (shared/infra/secure_kafka.py), run as a single-file source
// program on the broker's own class path: `java -cp 'libs/*' KafkaAcls.java client.properties < acls.txt`.
// Kafka 4.x moved AclCommand into kafka-tools, whose dependencies (Connect's runtime) the broker does not need;
// the Admin API in kafka-clients, already on the class path, does the same work.
//
// Each input line: PRINCIPAL RESOURCE_TYPE PATTERN_TYPE NAME OPERATION, e.g.
//   User:intake TOPIC LITERAL tthc.ingress.v1 READ
// Every binding allows, from any host. Creating a binding that exists changes nothing, so a restart may rerun it.

import java.io.BufferedReader;
import java.io.FileReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class KafkaAcls {
    public static void main(String[] args) throws Exception {
        Properties config = new Properties();
        try (FileReader reader = new FileReader(args[0], StandardCharsets.UTF_8)) {
            config.load(reader);
        }
        List<AclBinding> bindings = new ArrayList<>();
        BufferedReader input = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line = input.readLine(); line != null; line = input.readLine()) {
            String[] f = line.trim().split("\\s+");
            if (f.length == 1 && f[0].isEmpty()) {
                continue;
            }
            if (f.length != 5) {
                throw new IllegalArgumentException("expected 5 fields: " + line);
            }
            bindings.add(new AclBinding(
                new ResourcePattern(ResourceType.fromString(f[1]), f[3], PatternType.fromString(f[2])),
                new AccessControlEntry(f[0], "*", AclOperation.fromString(f[4]), AclPermissionType.ALLOW)));
        }
        try (Admin admin = Admin.create(config)) {
            admin.createAcls(bindings).all().get(60, TimeUnit.SECONDS);
        }
        System.out.println(bindings.size() + " ACL bindings in place");
    }
}
