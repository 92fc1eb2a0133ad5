// Seamline's launcher for Apache Iceberg's REST catalog test fixture, bound to loopback only.
// Compiled once with javac into the jar cache by backfill/sinks/iceberg/rest_server/setup.py.
// Usage: java -cp "<libs>/*:<classes>" SeamlineRestCatalog <port> <warehouse-uri> <jdbc-uri>
//        [<catalog.properties>]
// The optional properties file (mode 0600, it may hold S3 keys) adds catalog properties, e.g.
// s3.endpoint / s3.access-key-id / s3.secret-access-key / s3.path-style-access; with any s3.*
// property the catalog's FileIO is ResolvingFileIO (s3:// through S3FileIO, file:// through
// HadoopFileIO), so the warehouse may live on an S3-compatible server.
import java.io.FileInputStream;
import java.io.InputStream;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import org.apache.hadoop.conf.Configuration;
import org.apache.iceberg.CatalogProperties;
import org.apache.iceberg.CatalogUtil;
import org.apache.iceberg.catalog.Catalog;
import org.apache.iceberg.rest.RESTCatalogAdapter;
import org.apache.iceberg.rest.RESTCatalogServlet;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.servlet.ServletContextHandler;
import org.eclipse.jetty.servlet.ServletHolder;

public final class SeamlineRestCatalog {
  private SeamlineRestCatalog() {}

  public static void main(String[] args) throws Exception {
    Map<String, String> props = new HashMap<>();
    props.put(CatalogProperties.CATALOG_IMPL, "org.apache.iceberg.jdbc.JdbcCatalog");
    props.put(CatalogProperties.WAREHOUSE_LOCATION, args[1]);
    props.put(CatalogProperties.URI, args[2]);
    props.put("jdbc.schema-version", "V1");
    if (args.length > 3) {
      Properties extra = new Properties();
      try (InputStream in = new FileInputStream(args[3])) {
        extra.load(in);
      }
      for (String name : extra.stringPropertyNames()) {
        props.put(name, extra.getProperty(name));
      }
      if (props.keySet().stream().anyMatch(k -> k.startsWith("s3."))) {
        props.putIfAbsent(CatalogProperties.FILE_IO_IMPL, "org.apache.iceberg.io.ResolvingFileIO");
        props.putIfAbsent("http-client.type", "urlconnection"); // the module in pom.xml
      }
    }
    Catalog catalog = CatalogUtil.buildIcebergCatalog("seamline", props, new Configuration());
    ServletContextHandler context = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
    context.setContextPath("/");
    context.addServlet(new ServletHolder(new RESTCatalogServlet(new RESTCatalogAdapter(catalog))),
        "/*");
    Server server = new Server();
    ServerConnector connector = new ServerConnector(server);
    connector.setHost("127.0.0.1");
    connector.setPort(Integer.parseInt(args[0]));
    server.addConnector(connector);
    server.setHandler(context);
    server.start();
    System.out.println("seamline-rest-catalog listening on 127.0.0.1:" + connector.getLocalPort());
    server.join();
  }
}
